"""`fermtl serve` (TF Serving REST v1 + gRPC) and `fermtl predict` (local inference)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fermtl")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a pushed model over TF Serving's REST and gRPC APIs")
    p.add_argument("model_dir", help="<serving_dir>/<model> (watched for new versions) or a "
                   "version dir")
    p.add_argument("--name", help="model name in the URL (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8501, help="REST port (default 8501)")
    p.add_argument("--grpc-port", type=int, default=8500,
                   help="gRPC port (default 8500; -1: no gRPC)")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="dynamic batching: rows per model call (default 64)")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0,
                   help="dynamic batching: longest wait for more rows (default 2 ms)")
    p.add_argument("--batch-threads", type=int, default=2,
                   help="model calls running side by side (default 2)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request size limit")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="decoded pixels per image (checked from the header)")
    p.add_argument("--max-instances", type=int, default=256, help="rows per request")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds to receive a request body (then 408)")
    p.add_argument("--poll-seconds", type=float, default=1.0,
                   help="how often the model dir is checked for new versions (0: never)")
    p.add_argument("--keep-versions", type=int, default=2,
                   help="newest versions kept loaded (default 2)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="detect and classify faces in an image, folder or video")
    p.add_argument("path", help="image file, folder of images, or video file")
    p.add_argument("--model", required=True, help="exported model (as for `serve`)")
    p.add_argument("--csv", help="write one row per face here")
    p.add_argument("--annotate", metavar="DIR", help="write annotated images (boxes + labels)")
    p.add_argument("--detector", default="haar", choices=["haar", "none"],
                   help="'none' treats each image as one aligned face")
    p.add_argument("--every", type=int, default=10, help="video: classify every N-th frame")
    p.add_argument("--face-size", type=int,
                   help="aligned face side (default: what ingestion wrote for this model)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="convert a pushed model (TFLite or ONNX)")
    p.add_argument("model", help="pushed model (as for `serve`)")
    p.add_argument("--format", default="tflite", choices=["tflite", "onnx"],
                   help="tflite: float32 faces [1, S, S, 1] in [0, 1] -> outputs; "
                        "onnx: the same with any batch N (opset 17, onnxruntime)")
    p.add_argument("--out", help="output file (default: <version dir>.<format>)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score a pushed model on labelled data with the "
                       "Evaluator's TFMA slices and report")
    p.add_argument("model", help="pushed model (as for `serve`)")
    p.add_argument("data", help="data spec (YAML) or class folder root/[split/]<class>/*")
    p.add_argument("--out", default="runs/evaluate", help="output dir (report.md, evaluation)")
    p.add_argument("--detect", action="store_true",
                   help="class folder: detect and align faces (default: already aligned)")
    p.set_defaults(func=cmd_evaluate)


def cmd_serve(args) -> int:
    from pipeline.serving import BatchingConfig, Limits, ServingConfig, make_server

    config = ServingConfig(
        host=args.host, rest_port=args.port, grpc_port=args.grpc_port, name=args.name,
        limits=Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                      max_pixels=args.max_pixels, max_instances=args.max_instances,
                      read_timeout_s=args.read_timeout),
        batching=BatchingConfig(max_batch_size=args.max_batch_size,
                                max_wait_s=args.batch_timeout_ms / 1000.0,
                                num_threads=args.batch_threads),
        poll_s=args.poll_seconds, keep_versions=args.keep_versions)
    server = make_server(args.model_dir, config).start()
    name, url = server.name, server.rest_url
    versions = [s["version"] for s in server.manager.status() if s["state"] == "AVAILABLE"]
    print(f"serving {name!r} versions {versions} from {server.manager.base_dir}")
    print(f"  REST  GET  {url}/v1/models/{name}")
    print(f"        POST {url}/v1/models/{name}:predict   (and :classify)")
    if server.grpc_port:
        print(f"  gRPC  {args.host}:{server.grpc_port}  tensorflow.serving.PredictionService")
    server.wait()
    return 0


def cmd_predict(args) -> int:
    from pipeline.predict import format_table, predict_path

    predictions, stats = predict_path(args.path, args.model, args.csv, args.annotate,
                                      args.detector, args.every, args.face_size,
                                      progress=True)
    print(format_table(predictions))
    print(f"\n{stats['images']} images, {stats['faces']} faces, {stats['no_face']} without a "
          f"face, {stats['seconds']:.1f} s ({stats['images_per_s']:.1f} images/s)")
    for path, why in stats["unreadable"]:
        print(f"unreadable: {path}: {why}")
    if args.csv:
        print(f"CSV: {args.csv}")
    if args.annotate:
        print(f"annotated images: {args.annotate}")
    return 0


def cmd_export(args) -> int:
    from pipeline.export_formats import EXPORTERS, face_size

    path = EXPORTERS[args.format](args.model, args.out)
    size = face_size(args.model)
    batch = 1 if args.format == "tflite" else "N"
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB): input 'pixels' float32 "
          f"[{batch}, {size}, {size}, 1] in [0, 1], decoded as serving_default decodes")
    return 0


def cmd_evaluate(args) -> int:
    from pipeline.evaluate import evaluate

    result = evaluate(args.model, args.data, args.out, aligned=not args.detect)
    acc = result["accuracy"]
    print(f"{int(result['examples'] or 0)} faces, accuracy "
          f"{'n/a' if acc is None else f'{acc:.2%}'}; report: {result['report']}")
    return 0
