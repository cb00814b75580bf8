"""Serving a pushed model with TF Serving's contracts: REST API v1 (uvicorn +
Starlette) and gRPC ``PredictionService`` (grpcio, the official
``tensorflow-serving-api`` protos), with request limits, dynamic batching and
hot-loading of new versions from the model base directory.

Production can equally run the real ``tensorflow/serving`` container on the
same ``<model>/<version>/`` directory; clients written against this server
speak to it unchanged.

    from pipeline.serving import make_server
    with make_server("serving/fer", rest_port=0, grpc_port=0) as srv:
        ...  # srv.rest_url, srv.grpc_port
"""

from pipeline.serving.batching import BatchingConfig
from pipeline.serving.limits import Limits, RequestError
from pipeline.serving.server import Server, ServingConfig, make_server
from pipeline.serving.versions import ModelManager, find_version_dir

__all__ = ["BatchingConfig", "Limits", "ModelManager", "RequestError", "Server",
           "ServingConfig", "find_version_dir", "make_server"]
