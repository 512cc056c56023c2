"""EmpatheticDialogues loading, chat formatting, emotion tables and theory-driven preference pairs.

Pure Python (plus `datasets`, imported lazily, for the Hub mirror): nothing here imports torch.
"""
