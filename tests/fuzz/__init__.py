"""Fuzz harnesses for every parser that reads bytes an attacker (a TD, the host, a PCCS) chooses.

:mod:`.targets` holds the harnesses; ``tests/test_fuzz.py`` runs a short bounded pass in ``make
test``; ``python -m tests.fuzz.run --seconds N`` (``make fuzz``) runs them for as long as asked.
"""
