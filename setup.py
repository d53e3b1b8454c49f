"""The repository root *is* the ``espalier`` package: ``core/``, ``plugins/`` and ``api/``
install as ``espalier.core``, ``espalier.plugins`` and ``espalier.api``."""

from setuptools import find_packages, setup

SUBPACKAGES = ("core", "plugins", "api")

packages = ["espalier"] + [
    f"espalier.{name}"
    for name in find_packages(".", include=[f"{top}*" for top in SUBPACKAGES])
]

setup(
    packages=packages,
    package_dir={"espalier": "."},
    package_data={"": ["*.html", "*.jinja", "*.css", "*.js", "*.ini", "*.mako", "*.md", "*.svg"]},
)
