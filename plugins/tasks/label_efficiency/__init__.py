"""Label-efficiency curves (see :mod:`.curves`): the helpers ``probe``/``retrieval``/``finetune`` use to put a
curve into a record's ``extra``. This package registers no task of its own."""
