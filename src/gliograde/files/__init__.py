"""Files written whole or not at all (atomic writes, staged output folders, sealed JSON records), tables read as written, and quiet logging."""
