"""Models shipped with shapcam: the bundled digits CNN (shapcam.models.digits)."""
