"""gramine-sealing-key-provider: stable sealing keys for Intel TDX VMs from an SGX enclave on the same host."""

__version__ = "0.1.0"
