"""clear-lab: reproduce, explain and extend CLEAR (null-space projection for cross-modal de-redundancy)."""

__version__ = "0.1.0"
