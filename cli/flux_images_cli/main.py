"""Entry point placeholder replaced by the CLI implementation."""


def main() -> int:
    raise SystemExit("flux-images: not implemented yet")
