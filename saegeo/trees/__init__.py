"""Feature DAGs across widths, trees and forests, and their JSON contract (schemas shipped here)."""
