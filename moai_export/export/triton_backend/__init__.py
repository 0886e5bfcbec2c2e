"""Python-backend model sources that `moai-export triton` copies into a repository as
`<model>/1/model.py`. They run inside tritonserver's Python stub, which has no moai_export: the
tokenizer and the python encoder import only what a Triton runtime has (numpy, tokenizers,
onnxruntime), the tokenizer's input rules travel beside it as a copy of
moai_export/core/input_rules.py, and only the engine encoder imports moai_export (from the source
its `python_path` parameter names, in the environment with torch)."""
