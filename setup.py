"""Package set-up: the `research` library and the `pallas_kernels` kernels."""
import setuptools

setuptools.setup(
    name="research",
    version="0.1.0",
    description="A JAX research codebase: models, optimizers, kernels, training, decoding, evaluation.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["research", "research.*", "pallas_kernels", "pallas_kernels.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "grain>=0.2.12",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "ml-dtypes>=0.4",
        "optuna>=5.0",
        "cmaes>=0.11",
        "scikit-learn>=1.4",  # the bundled digits images (research/data/scenes.py)
        "scipy>=1.11",  # connected components of generated scenes (research/eval/scene_judge.py)
        "jsonschema>=4.20",  # the gallery's independent check of schema-constrained output (experiments/)
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pycocotools>=2.0.8", "pgserver>=0.1.4", "psycopg2-binary>=2.9",
                 # Hugging Face Chameleon built live for the conversion tests; torch pinned to its CPU build
                 "torch==2.13.0", "transformers>=4.45"],
        # the reference libraries the benchmarks measure beside ours: structured generation (outlines-core,
        # llguidance); training and decoding speed (PyTorch + transformers, scripts/torch_reference.py)
        "bench": ["outlines-core>=0.2", "llguidance>=1.0", "torch==2.13.0", "transformers>=4.45"],
        "postgres": ["psycopg2-binary>=2.9"],
        "dashboard": ["optuna-dashboard>=0.21"],
        "tpu": ["jax[tpu]"],
    },
)
