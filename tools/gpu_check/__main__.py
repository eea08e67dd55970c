from tools.gpu_check.main import main

main()
