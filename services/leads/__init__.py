"""The leads service: form submissions become leads with attribution, a score and a lifecycle."""
