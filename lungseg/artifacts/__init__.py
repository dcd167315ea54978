"""The trained model as a thing you hand over: checkpoints (loaded tensors-only, building only the
network), pretrained folders and the local model store, the model's description and card, ONNX and
torch.export writing, INT8."""
