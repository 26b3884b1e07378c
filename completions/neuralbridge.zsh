#compdef neuralbridge

_neuralbridge_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _NEURALBRIDGE_COMPLETE=complete_zsh neuralbridge)
}

compdef _neuralbridge_completion neuralbridge
