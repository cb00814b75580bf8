"""``python -m components.synthetic --out out/synth --sheet /tmp/sheet.png``."""

from components.synthetic.dataset import main

if __name__ == "__main__":
    raise SystemExit(main())
