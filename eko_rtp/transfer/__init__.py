"""Handing a caller to a technician: business hours, technician load and the decision."""
