"""Folders as they really are: types found by content, compressed files and archives opened,
office and e-book formats, OCR for pages without text, include/exclude patterns."""
