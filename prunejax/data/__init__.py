"""Token data: DATA_DIR storage (`store`), preparation from text, and the grain input pipeline."""
