"""esnet-tf: ESNet (CBAM 1D CNN) on IS-DOS for formation energy and stability screening."""
from setuptools import find_packages, setup

CORE = [
    "tensorflow>=2.21,<2.22",  # not tensorflow-cpu: tensorflow-serving-api requires tensorflow
    "keras>=3.15,<4",
    "tensorflow-datasets>=4.9.10",
    "pymatgen>=2026.10",
    "keras-tuner>=1.4.8",
    "numpy>=2.0",
    "tensorboard",  # keras-tuner imports it
    "importlib_resources",  # tensorflow-datasets imports it
    "mlcroissant",  # the `tfds` CLI imports it
    "matplotlib",
    "tqdm",
    "scikit-learn",  # composition-only baseline of the accuracy benchmark
    "lxml",  # streaming vasprun.xml reader
]
EXTRAS = {
    "dft": ["gpaw>=26.7", "gpaw-data>=1.2", "ase>=3.29"],
    "beam": ["apache-beam>=2.77"],
    "serving": ["tensorflow-serving-api>=2.21,<2.22"],
    "test": ["pytest>=8", "dill"],  # tfds.testing imports dill
}
EXTRAS["all"] = sorted({d for deps in EXTRAS.values() for d in deps})

setup(
    name="esnet-tf",
    version="0.1.0",
    description="ESNet: formation energy and stability of relaxed crystals from the DOS of unrelaxed structures",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["esnet_tf", "esnet_tf.*", "tuning", "tuning.*"]),  # datasets/ is read from the checkout
    package_data={"esnet_tf": ["py.typed"], "tuning": ["search_space.json"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["esnet = esnet_tf.cli:main"]},
)
