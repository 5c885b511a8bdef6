"""The discrete Euler (CTMC jump) solver step, in torch and as fused Triton kernels."""
