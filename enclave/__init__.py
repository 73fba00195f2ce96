"""Build tooling for the production enclave: lock, enclave tree, manifest, measurement, dry run.

None of this is installed or measured: it runs on the build host (and in tests) to produce and check
what the enclave runs. The enclave itself runs only the installed package from the enclave tree.
"""
