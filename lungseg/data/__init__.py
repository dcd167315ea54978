"""The data: the dataset layout and pairing, reading films and masks, the one preprocessing, the
DataModule, the augmentations of real films, the Kaggle download and the built-in synthetic sample.
"""
