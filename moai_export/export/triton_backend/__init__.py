"""Python-backend model sources that `moai-export triton` copies into a repository as
`<model>/1/model.py`. They run inside tritonserver's Python stub, so they import only what a
Triton runtime has (numpy, tokenizers, onnxruntime) and never moai_export itself."""
