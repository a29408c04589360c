"""What a file is and its text: type by content, PDF, Word, HTML, e-mail, Markdown, office and e-book formats, OCR."""
