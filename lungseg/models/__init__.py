"""The networks: the seed's enhanced U-Net."""
