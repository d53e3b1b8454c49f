"""Text classifiers on a shipped encoder: labelled data, training, metrics and a detoxify scorer.

The toxicity and injection guardrails train and serve their classifiers with these.
"""
