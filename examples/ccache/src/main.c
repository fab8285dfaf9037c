#include <stdio.h>
#include "greet.h"

int main(void) {
    printf("%s\n", greeting());
    return table_checksum() == 0;
}
