"""An independent port of IA3 (`tinyia3`) and its conformance driver: the "Validate your port" walkthrough."""
