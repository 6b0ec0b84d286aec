# Stage: finetune (see src/lnpeft and DESIGN).
