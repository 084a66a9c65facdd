"""`make bench`: the local gateway against the same backend called directly (see __main__)."""
