"""`fermtl serve` (TF Serving REST v1 on loopback) and `fermtl predict` (local inference)."""

from __future__ import annotations

import logging

log = logging.getLogger("fermtl")


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a pushed model over TF Serving's REST API v1")
    p.add_argument("model_dir", help="<serving_dir>/<model> (latest version) or a version dir")
    p.add_argument("--name", help="model name in the URL (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="detect and classify faces in an image, folder or video")
    p.add_argument("path", help="image file, folder of images, or video file")
    p.add_argument("--model", required=True, help="exported model (as for `serve`)")
    p.add_argument("--csv", help="write one row per face here")
    p.add_argument("--annotate", metavar="DIR", help="write annotated images (boxes + labels)")
    p.add_argument("--detector", default="haar", choices=["haar", "none"],
                   help="'none' treats each image as one aligned face")
    p.add_argument("--every", type=int, default=10, help="video: classify every N-th frame")
    p.set_defaults(func=cmd_predict)


def cmd_serve(args) -> int:
    from pipeline.serving import make_server

    server = make_server(args.model_dir, args.host, args.port, args.name)
    model = server.served_model
    print(f"serving {model.name!r} version {model.version} from {model.path}")
    print(f"  GET  http://{args.host}:{args.port}/v1/models/{model.name}")
    print(f"  POST http://{args.host}:{args.port}/v1/models/{model.name}:predict")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_predict(args) -> int:
    from pipeline.predict import format_table, predict_path

    predictions, stats = predict_path(args.path, args.model, args.csv, args.annotate,
                                      args.detector, args.every, progress=True)
    print(format_table(predictions))
    print(f"\n{stats['images']} images, {stats['faces']} faces, {stats['no_face']} without a "
          f"face, {stats['seconds']:.1f} s ({stats['images_per_s']:.1f} images/s)")
    if args.csv:
        print(f"CSV: {args.csv}")
    if args.annotate:
        print(f"annotated images: {args.annotate}")
    return 0
