"""From the CAPS to the engines' batches: where each session's tensor lives (caps.py), how an image is cut into
elements (elements.py) and preprocessed (transforms.py), the per-session dataset (dataset.py), its readers
(readers.py), the batches on the CPU (batches.py) or on the device (device.py)."""
