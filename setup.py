"""Package metadata for keras_coatnet."""

from setuptools import find_packages, setup

setup(
    name="keras_coatnet",
    version="0.1.0",
    description="CoAtNet (Dai et al., NeurIPS 2021) as Keras 3 applications",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_coatnet", "keras_coatnet.*"]),
    package_data={"keras_coatnet": ["data/*.json"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "h5py",
        # Pretrained weights: the Hub client (cache, mirrors, offline mode) and
        # safetensors read as NumPy. Lower bounds are the versions the tests ran.
        "huggingface_hub>=2.4,<3",
        "safetensors>=0.8,<1",
    ],
    extras_require={
        "train": ["tensorflow-datasets", "scikit-learn", "tensorboard"],
        "test": ["pytest", "pytest-xdist", "ruff==0.17.6", "jax[cpu]"],
        # The PyTorch reference for conversion and parity tests. A pinned pair
        # whose torchvision imports beside its torch (timm needs torchvision);
        # see the README's developer section.
        # The serving client example (PredictRequest protos).
        "serving": ["tensorflow-serving-api<3"],
        "timm": ["torch==2.14.1", "torchvision==0.29.1", "timm==1.0.31"],
        # `coatnet plot-bias` and `coatnet plot-history`.
        "plot": ["matplotlib"],
    },
    entry_points={"console_scripts": ["coatnet=keras_coatnet.cli:main"]},
)
