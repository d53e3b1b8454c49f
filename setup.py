"""The repository root *is* the ``espalier`` package: ``core/``, ``plugins/`` and ``api/``
install as ``espalier.core``, ``espalier.plugins`` and ``espalier.api``; the root contributes
only its ``__init__.py`` (not this file, nor tests, examples or benchmarks)."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SUBPACKAGES = ("core", "plugins", "api")


class BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "espalier":
            modules = [module for module in modules if module[1] == "__init__"]
        return modules


packages = ["espalier"] + [
    f"espalier.{name}" for name in find_packages(".", include=[f"{top}*" for top in SUBPACKAGES])
]

setup(
    packages=packages,
    package_dir={"espalier": "."},
    package_data={
        "": ["*.html", "*.jinja", "*.css", "*.js", "*.ini", "*.mako", "*.md", "*.svg", "*.json", "*.toml"],
        # the console's templates and vendored scripts live in plain folders, not packages
        "espalier.api.console": ["templates/*.html", "static/*"],
    },
    cmdclass={"build_py": BuildPy},
)
