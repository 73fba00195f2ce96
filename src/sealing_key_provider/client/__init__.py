"""The TD side: what a TDX guest needs to obtain its sealing key from the provider.

:mod:`.quote_source` produces the TD's own DCAP quote over report data of its choosing, from the Linux
kernel's configfs-tsm interface (production) or from the simulated platform (development and tests).
"""
