"""jaxshape: JAX/Flax 3D shape generative models (TRELLIS sparse structure, PartPacker vecset)."""
from setuptools import find_packages, setup

setup(
    name="jaxshape",
    version="0.1.0",
    description="Pure-functional Flax ports of TRELLIS and PartPacker 3D shape VAEs and DiTs, "
    "with PyTorch parity, sharded rectified-flow training and Orbax checkpoints.",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxshape", "jaxshape.*"]),
    install_requires=[
        # jax 0.10.x is the newest release for Python 3.11; the code avoids 0.11+-only APIs.
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "numpy>=1.26",
        "trimesh>=4.0",
        "ml-collections>=1.1",
        "chex>=0.1.90",
        "safetensors>=0.4",
        "absl-py>=2.0",
        "tqdm>=4.0",
        "scikit-image>=0.22",
        "pillow>=10",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",  # python -m jaxshape.evaluate: metric curves
        # data pipeline
        "grain>=0.2.18",
        "array_record>=0.8",
        "msgpack>=1.0",
        "scipy>=1.11",
        "point-cloud-utils>=0.34",
        "manifold3d>=3.0",
        "embreex>=4.3; platform_machine == 'x86_64'",
    ],
    extras_require={
        # torch must be the CPU build: install it first with `pip install torch==2.13.0`
        # (a bare `torch` requirement resolves to a multi-GB CUDA build).
        # transformers: the DINOv2 / DINOv3 parity oracle (models built from configs; nothing is downloaded)
        # moderngl: the view renderer (its tests skip on a machine without a system EGL)
        # pymcubes: PartPacker's marching cubes (the reference meshes of the PartPacker pipeline parity test)
        "test": ["pytest>=8", "torch>=2.4", "transformers>=4.56", "moderngl==5.13.0", "pymcubes==0.1.6"],
        "dev": ["pytest>=8", "torch>=2.4", "transformers>=4.56", "moderngl==5.13.0", "pymcubes==0.1.6",
                "ruff==0.17.6"],
        # optional accelerators of `python -m jaxshape.data.prepare` (exact numpy fallbacks exist):
        # fpsample builds from source with Rust on Python 3.11; open3d (Embree point queries) speeds up the TSDF
        # 1.3-2x and needs the system's libusb-1.0 (Debian: apt-get install libusb-1.0-0)
        "fast": ["fpsample>=1.0", "open3d>=0.18"],
        # PartPacker's image preprocessing exactly as upstream (cv2 resizes; jaxshape.image has an equal numpy path)
        "cv2": ["opencv-python-headless>=4.10"],
        # rendering conditioning views (prepare --views N): OpenGL over EGL; the system needs libEGL and a GL driver
        "render": ["moderngl==5.13.0"],
    },
    entry_points={
        "console_scripts": [
            "jaxshape-convert=jaxshape.convert.cli:main",
            "jaxshape-sample=jaxshape.sample:main",
            "jaxshape-evaluate=jaxshape.evaluate:main",
            "jaxshape-generate=jaxshape.generate:main",
        ],
    },
)
