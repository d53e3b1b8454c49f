"""Labeling tasks: items, generated candidates, labelers, leases, progress and agreement.

Import :class:`espalier.core.sources.labeling.service.LabelingService` from its module: this package is
also imported by the pair store (for per-task exclusions), so it stays free of heavy imports.
"""
