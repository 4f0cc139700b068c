"""State space duality (chapter 08; Dao & Gu 2024): a selective SSM with a scalar ``A``
per head is gated linear attention with a scalar gate.

``numpy_ref`` (float64) and ``torch_impl`` each hold three equal forms, ``ssd_scan`` (the
SSM recurrence), ``ssd_as_gla`` (chapter 04's gated linear attention) and
``ssd_quadratic`` (the masked attention form).
"""
