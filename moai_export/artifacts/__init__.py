"""Artifacts and their kinds: directories written whole or not at all (directories), described by
a manifest of every file and admitted only for the serving configurations a gate ran
(admission, triton_admission), and the registry of kinds: how each is named, recognised,
loaded and admitted (kinds)."""
