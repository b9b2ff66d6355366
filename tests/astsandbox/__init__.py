"""A real Asterisk in a temp folder, for tests and benchmarks (see sandbox.py).

    from astsandbox import Sandbox, find_asterisk
    binary = find_asterisk()                     # None when there is no Asterisk here
    with Sandbox(binary, root) as ast:
        ast.load_dialplan("#include /path/to/shipped.conf\\n[out]\\nexten => _X.,1,Dial(Local/${EXTEN}@sandbox-sink)")
        call = ast.originate("3331234567", "out", variables={"RPO_BRAND": "Acme"})
        outcome = ast.wait_for(call)             # the call's variables when it hung up
        assert ast.sink_hits(call) == ["3331234567"]

The pytest fixture ``asterisk_sandbox`` (tests/conftest.py) starts one per test session.
"""
from .sandbox import DEFAULT_BINARY, Call, Sandbox, SandboxError, find_asterisk

__all__ = ["DEFAULT_BINARY", "Call", "Sandbox", "SandboxError", "find_asterisk"]
