"""What a document sends: prompts, validated controls, token counts, typed answers, columns."""
