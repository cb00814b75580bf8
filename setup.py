"""fer-mtl: multi-task facial expression recognition on TensorFlow Extended."""

from setuptools import find_packages, setup

setup(
    name="fer-mtl",
    version="0.1.0",
    description="Multi-task facial expression recognition pipeline on TFX",
    python_requires=">=3.10,<3.11",
    # No `kubeflow` package: that import name belongs to the Kubeflow SDKs
    # (kubeflow-training, kubeflow-katib, kubeflow); kubeflow/ holds the component
    # image and deployment notes, the KFP compiler is pipeline.kubeflow_runner.
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*",
                                    "models", "models.*", "benchmarks"]),
    package_data={"pipeline": ["configs/*.yaml", "configs/*/*.yaml", "schema/*.pbtxt"],
                  "benchmarks": ["*.txt"]},
    install_requires=[
        "tfx==1.16.0",
        "dill",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "scikit-learn",
        "pillow",
        "opencv-python-headless",
        # serving (pipeline/serving): TF Serving's REST and gRPC contracts
        "uvicorn",
        "starlette",
        "grpcio",
        "tensorflow-serving-api",
    ],
    extras_require={
        "kfp": ["tfx[kfp]==1.16.0"],
        "dev": ["pytest", "pytest-timeout"],
        # `fermtl export --format onnx` (pins in constraints.txt).
        "onnx": ["tf2onnx", "onnx", "onnxruntime"],
    },
    entry_points={"console_scripts": ["fermtl=pipeline.cli:main"]},
)
