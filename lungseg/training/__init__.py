"""Training's own pieces: the LightningModule, callbacks, resume rules, run records, readable run
names, TensorBoard HParams and the sweep summary."""
