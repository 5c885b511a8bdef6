"""Files in and out: atomic writes, contained paths, images and MP4s, token files, safetensors folders."""
