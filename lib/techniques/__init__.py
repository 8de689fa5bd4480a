"""One module per technique, each holding only its mechanism and importing only ``lib``'s core: ``lora``
(adapters, merging), ``prune`` (importance, unit removal, zeros), ``quantize`` (int8 scales, ONNX export, ONNX
Runtime int8), ``distill`` (the KD loss, students from the teacher's layers)."""
