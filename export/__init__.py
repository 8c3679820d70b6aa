"""Deployment side of edgeqa: ONNX export with parity checks, graph fusion, int8 quantization, mobile format.

It may import `bench` (for data and inference used in parity checks and calibration), never `compress`.
"""
