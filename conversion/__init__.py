"""Checkpoint conversion: the authors', Transformers' and timm's PVT layouts to hf_pvt safetensors folders."""
