"""Stage-1 data builder: initial answers, teacher reflections, filter/mix (``python -m srpo_mcore.reflection.build``)."""
