"""The SageMaker hosting emulator: control plane, runtime and endpoint instance processes."""
