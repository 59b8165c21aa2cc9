"""Real boards for the ``--target ssh://`` tests: the host's own sshd on loopback (x86) and an arm64
Debian root run under qemu-user behind its own sshd. No mocks: the product's ssh transport talks to
a real OpenSSH server with host-key checking on, so what passes here passes against a real board.

    sshd.py     LoopbackSshd: one sshd on 127.0.0.1 with throwaway keys and its own ssh_config
    arm64.py    the cached arm64 root (debootstrap + qemu-user-static) and the emulated board on it
    procs.py    process trees, mount namespaces and the records that let a later run clean up a killed one
    fixtures.py the session fixtures ``ssh_board`` and ``arm64_board``
"""
