"""evaluation: accuracy per format measured on the device, against labels and PyTorch."""
